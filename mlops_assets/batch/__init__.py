"""Batch scoring of Blob drops: the Pipes script and the helpers it shares with the asset."""
