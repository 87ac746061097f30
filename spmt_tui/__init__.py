"""spmt-tui: migrate file shares into SharePoint Online from a terminal."""

__version__ = "0.1.0"
