"""The package version, in a leaf module: core and display read it without importing the package face."""

__version__ = "0.1.0"
