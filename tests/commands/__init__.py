"""Tests of daemon/commands/."""
