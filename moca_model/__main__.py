"""`python -m moca_model demo|bench|bench-face|toybench ...`"""
import sys


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"demo": "moca_model.demo", "bench": "moca_model.bench", "bench-face": "moca_model.face.bench",
                "toybench": "moca_model.toy.toybench"}
    if not argv or argv[0] not in commands:
        print("usage: python -m moca_model {demo,bench,bench-face,toybench} [options]   (add -h for a command's options)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    import importlib
    return importlib.import_module(commands[argv[0]]).main(argv[1:]) and 0


if __name__ == "__main__":
    sys.exit(main())
