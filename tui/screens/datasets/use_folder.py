"""`u` on Datasets: use the open folder in a stored profile. The profile's dataset TOML gets the folder as its
first [[directory]] path; the changed line is shown and saved (a new history version) only on `y`, through
the same confirm-then-save as the Models screen's `u` (tui.screens.use_in_profile)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual.widgets import DataTable

from profiles.document import Profile
from tui.screens.use_in_profile import UseInProfile

KEY = "directory[0].path"


@dataclass(frozen=True)
class FolderChange:
    key: str
    old: Any
    new: str


def set_folder(profile: Profile, folder: Path) -> tuple[list[object], str]:
    """The edit: the dataset TOML's first [[directory]] path becomes `folder` (other entries stay)."""
    if profile.dataset is None:
        raise ValueError(f"its dataset TOML ({profile.dataset_ref!r}) was not found: nothing to put the folder in")
    old = profile.dataset.get(KEY)
    if old is not None and Path(str(old)).expanduser() == folder:
        return [], f"folder {folder}"
    profile.dataset.set(KEY, str(folder))
    return [FolderChange(f"dataset:{KEY}", old, str(folder))], f"folder {folder}"


class UseFolder(UseInProfile):
    source: Any  # tui.widgets.dataset_model.DatasetSource | None, from the Datasets screen state

    def _folder_to_use(self) -> Path | None:
        """The folder of the highlighted image (a dataset may list several), else the first one opened."""
        table = self.query_one("#ds-files", DataTable)  # type: ignore[attr-defined]
        if table.row_count:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
            if key:
                return Path(str(key)).parent
        if self.source is not None and self.source.directories:
            return Path(self.source.directories[0])
        return None

    def action_use_folder(self) -> None:
        folder = self._folder_to_use()
        if folder is None:
            self.notify("open a folder first (o)", severity="warning")
            return

        def chosen(name: str) -> None:
            self.propose_use(name, lambda profile: set_folder(profile, folder), f"dataset folder {folder}")

        self._profile_choice(f"Use {folder} in profile:", chosen)  # type: ignore[attr-defined]
