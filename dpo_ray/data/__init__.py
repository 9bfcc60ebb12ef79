"""Preference data: loading, normalising, tokenising, collating."""
