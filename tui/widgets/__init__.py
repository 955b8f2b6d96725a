"""Reusable widgets of the deck."""
