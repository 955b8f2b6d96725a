"""One module per screen of the deck."""
