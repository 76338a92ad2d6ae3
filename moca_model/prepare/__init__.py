"""`train_moca.py prepare`: raw videos -> clips, face masks, cross-shot references, captions and the manifest
that `train_moca.py cache` reads. Stages, one module each: ``shots`` (cuts), ``tracking`` (face tracks per
shot), ``identities`` (clustering tracks across shots and videos), ``selection`` (clip windows and quality
filters), ``references`` (photos of the same identity from other shots), ``captions``, ``extract`` (writing
clips, masks and photos), ``report`` (report JSON and contact sheet), ``pipeline`` (the command)."""
