"""Integrations with serving stacks and frameworks; each imports its framework only when used."""
