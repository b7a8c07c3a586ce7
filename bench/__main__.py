"""``python -m bench``: the measurement job (not yet implemented: see the measurement-core issue)."""

import sys

if __name__ == "__main__":
    sys.exit("python -m bench: not yet implemented (the measurement core is the next issue)")
