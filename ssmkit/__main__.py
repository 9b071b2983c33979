"""`python -m ssmkit` (and `accelerate launch -m ssmkit`) run the CLI."""
from ssmkit.cli import main

if __name__ == "__main__":
    main()
