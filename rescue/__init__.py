"""rescue: capture, restore and browse disk images from a bootable rescue system."""

__version__ = "0.1.0"
