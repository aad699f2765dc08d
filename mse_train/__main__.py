"""`python -m mse_train` runs the same app as the `mse-train` script."""

from mse_train.cli import main

if __name__ == "__main__":
    main()
