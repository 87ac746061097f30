"""Destination step: the site URL, one of its document libraries, and a folder in it."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Input, Label, OptionList, Static, Tree
from textual.widgets.option_list import Option
from textual.widgets.tree import TreeNode

from spmt_tui.tui.screens.wizard import WizardStep, field_row
from spmt_tui.tui.services import Folder, Library, ServiceError, SiteInfo

INVALID_FOLDER_CHARACTERS = set('"*:<>?\\|')
"""Characters SharePoint Online rejects in folder names (besides the path separator)."""


def folder_problem(folder: str) -> str | None:
    """Return why ``folder`` is not a valid folder path inside a library, or None."""
    if not folder.strip("/"):
        return None
    for part in folder.strip("/").split("/"):
        if not part.strip():
            return f"empty folder name in {folder!r}"
        bad = sorted(set(part) & INVALID_FOLDER_CHARACTERS)
        if bad:
            return f"folder name {part!r} contains {' '.join(bad)}, which SharePoint rejects"
        if part != part.strip() or part.endswith("."):
            return f"folder name {part!r} starts or ends with a space or ends with a dot"
    return None


class DestinationScreen(WizardStep):
    """Pick the site, the library and the folder."""

    STEP = "Destination"

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("ctrl+n", "next", "Next", priority=True),
        Binding("ctrl+r", "load_site", "Reload libraries"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.site: SiteInfo | None = None
        self._loaded_nodes: set[str] = set()

    def compose(self) -> ComposeResult:
        plan = self.app.plan
        yield from self.compose_header()
        with Vertical(classes="form"):
            yield field_row("Site URL", Input(
                plan.site_url, placeholder="https://contoso.sharepoint.com/sites/finance (Enter loads)",
                id="site-url", compact=True))
            yield Static("", id="site-status", classes="status")
            with Horizontal(id="destination-pickers"):
                with Vertical(id="library-column"):
                    yield Label("Document library")
                    yield OptionList(id="libraries")
                with Vertical(id="folder-column"):
                    yield Label("Folder in the library (blank: the library root)")
                    yield Input(plan.folder, placeholder="Finance/2024", id="folder", compact=True)
                    yield Tree("(library root)", id="folders")
        yield from self.compose_footer()

    def on_mount(self) -> None:
        super().on_mount()
        tree = self.query_one("#folders", Tree)
        tree.show_root = True
        tree.root.expand()
        if self.query_one("#site-url", Input).value.strip():
            self.action_load_site()
        else:
            self.query_one("#site-url", Input).focus()

    # -- site and libraries ---------------------------------------------------------------------

    @on(Input.Submitted, "#site-url")
    def _site_submitted(self) -> None:
        self.action_load_site()

    def action_load_site(self) -> None:
        url = self.query_one("#site-url", Input).value.strip().rstrip("/")
        if not url:
            self.show_error("Type the site URL first.")
            return
        self.query_one("#site-status", Static).update(f"Loading the libraries of {url}…")
        self._load_site(url)

    @work(exclusive=True, group="sharepoint", exit_on_error=False)
    async def _load_site(self, url: str) -> None:
        signed_in = self.app.plan.signed_in
        try:
            site = await self.app.services.site(signed_in, url)
        except ServiceError as error:
            self.site = None
            self.query_one("#site-status", Static).update("")
            self.show_error(str(error))
            return
        self.show_error("")
        self.site = site
        self.app.plan.site_url = url
        self._show_libraries(site)

    def _show_libraries(self, site: SiteInfo) -> None:
        status = self.query_one("#site-status", Static)
        status.update(f"[b]✓[/b] {site.title or site.url}: {len(site.libraries)} document "
                      f"librar{'y' if len(site.libraries) == 1 else 'ies'}")
        libraries = self.query_one("#libraries", OptionList)
        libraries.clear_options()
        libraries.add_options([Option(library.title, id=library.title) for library in site.libraries])
        titles = [library.title for library in site.libraries]
        if self.app.plan.library in titles:
            chosen: str | None = self.app.plan.library
        else:
            chosen = titles[0] if titles else None
        if chosen is not None:
            libraries.highlighted = titles.index(chosen)
            self._library_chosen(chosen)
        libraries.focus()

    @on(OptionList.OptionHighlighted, "#libraries")
    def _library_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id and event.option.id != self.app.plan.library:
            self._library_chosen(str(event.option.id))

    @on(OptionList.OptionSelected, "#libraries")
    def _library_selected(self, event: OptionList.OptionSelected) -> None:
        self._library_chosen(str(event.option.id))
        self.query_one("#folder", Input).focus()

    def _library(self, title: str) -> Library | None:
        if self.site is None:
            return None
        return next((library for library in self.site.libraries if library.title == title), None)

    def _library_chosen(self, title: str) -> None:
        changed = title != self.app.plan.library
        self.app.plan.library = title
        library = self._library(title)
        tree = self.query_one("#folders", Tree)
        tree.clear()
        tree.root.set_label(f"{title} (library root)")
        self._loaded_nodes.clear()
        if changed:
            self.query_one("#folder", Input).value = ""
        if library is not None and library.root_folder_url:
            tree.root.data = library.root_folder_url
            self._load_folders(tree.root, library.root_folder_url)

    # -- folders --------------------------------------------------------------------------------

    @work(group="folders", exit_on_error=False)
    async def _load_folders(self, node: TreeNode, server_relative_url: str) -> None:
        if server_relative_url in self._loaded_nodes:
            return
        self._loaded_nodes.add(server_relative_url)
        try:
            folders = await self.app.services.folders(self.app.plan.signed_in, self.app.plan.site_url,
                                                      server_relative_url)
        except ServiceError as error:
            self._loaded_nodes.discard(server_relative_url)
            self.show_error(f"Cannot list folders: {error}")
            return
        self._add_folder_nodes(node, folders)

    def _add_folder_nodes(self, node: TreeNode, folders: list[Folder]) -> None:
        node.remove_children()
        for folder in folders:
            node.add(folder.name, data=folder.server_relative_url, allow_expand=True)
        node.expand()

    @on(Tree.NodeExpanded, "#folders")
    def _expanded(self, event: Tree.NodeExpanded) -> None:
        if event.node.data:
            self._load_folders(event.node, str(event.node.data))

    @on(Tree.NodeSelected, "#folders")
    def _folder_picked(self, event: Tree.NodeSelected) -> None:
        library = self._library(self.app.plan.library)
        url = str(event.node.data or "")
        if library is None or not url.startswith(library.root_folder_url):
            return
        self.query_one("#folder", Input).value = url[len(library.root_folder_url):].strip("/")

    @on(Input.Submitted, "#folder")
    def _folder_submitted(self) -> None:
        self.action_next()

    # -- next -----------------------------------------------------------------------------------

    def save(self) -> bool:
        plan = self.app.plan
        url = self.query_one("#site-url", Input).value.strip().rstrip("/")
        if self.site is None or url != plan.site_url:
            self.show_error("Load the site first: press Enter in the site URL field.")
            return False
        if self._library(plan.library) is None:
            self.show_error("Choose a document library.")
            return False
        folder = self.query_one("#folder", Input).value.strip().strip("/")
        problem = folder_problem(folder)
        if problem:
            self.show_error(f"Folder: {problem}")
            return False
        plan.folder = folder
        return True

    def go_next(self) -> None:
        from spmt_tui.tui.screens.settings_form import SettingsScreen

        self.app.push_screen(SettingsScreen())
