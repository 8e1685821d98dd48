"""What the tool does, as plain functions both front ends call: capture, restore, verify, info."""
