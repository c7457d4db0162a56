"""`python -m whisper_kdq` runs the command line."""

from whisper_kdq.cli import main

main()
