"""``python -m fastloss bench``: same as the ``fastloss`` console script."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
