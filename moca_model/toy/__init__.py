"""The toy world (DESIGN.md §9): cartoon people, captioned clips and references, and the toy models trained
on them. The MoCA core (``moca_model/*.py``) never imports this package; the API lives in
``moca_model.toy.world``."""
