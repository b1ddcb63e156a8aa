"""``python -m acsl_tf``: the ``acsl-tf`` command line (see :mod:`acsl_tf.cli`)."""

import sys

from acsl_tf.cli import main

if __name__ == "__main__":
    sys.exit(main())
