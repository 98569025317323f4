"""One module per `recohop` subcommand; each exposes `register(subparsers)`."""
