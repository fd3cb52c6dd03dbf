"""Tests for Roost; one file per part."""
