"""Tests of daemon/janitor/."""
