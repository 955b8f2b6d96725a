"""Edit a stored profile from a Models screen: apply an edit to a loaded copy, show the lines it changes,
save it (a new history version) only on `y`. Shared by the Models and the check screens."""

from __future__ import annotations

from collections.abc import Callable

from textual import work
from textual.app import App

from profiles.document import Profile


def change_lines(profile: Profile, changes: list[object], source: str) -> str:
    """`main.toml:24: model.x = '/new'   (was '/old')`: which lines an edit changes, for the confirm."""
    out = []
    for c in changes:
        key, old, new = c.key, c.old, c.new  # type: ignore[attr-defined]
        # `dataset:KEY` is a key of the dataset TOML (Datasets' "use this folder"); the rest are main.toml's.
        file, _, key = key.rpartition(":")
        doc, where = (profile.dataset, "dataset.toml") if file == "dataset" and profile.dataset else (profile.main, source)
        line = doc.line_of(key)
        was = f"   (was {old!r})" if old not in (None, "") else "   (new key)"
        out.append(f"{where}:{line or '?'}: {key} = {new!r}{was}")
    return "\n".join(out)


class UseInProfile:
    """Shared by the Models and the check screens: edit a stored profile after showing the changed lines."""

    app: App[object]
    notify: Callable[..., None]
    confirm: Callable[[str, Callable[[], None]], None]

    def _note(self, text: str, error: bool = False) -> None:
        """notify() from a worker thread."""
        self.app.call_from_thread(self.notify, text, severity="error" if error else "information",
                                  timeout=8 if error else 4)

    @work(thread=True, group="models-use")
    def propose_use(self, name: str, edit: Callable[[Profile], tuple[list[object], str]], message: str) -> None:
        """Apply `edit` to a loaded copy, show the changed lines, save (with history) only on `y`."""
        from profiles import store

        try:
            profile = store.load_stored(name)
            changes, what = edit(profile)
        except Exception as exc:
            self._note(f"use in {name}: {exc}", error=True)
            return
        if not changes:
            self._note(f"{name}: already uses {what}; nothing to change")
            return
        lines = change_lines(profile, changes, "main.toml")

        def save() -> None:
            self._save_profile(name, profile, message, len(changes))

        self.app.call_from_thread(self.confirm, f"Fill profile {name} with {what}?\n\n{lines}", save)

    @work(thread=True, group="models-save")
    def _save_profile(self, name: str, profile: Profile, message: str, count: int) -> None:
        from profiles import store

        try:
            store.save_profile(name, profile, message)
        except Exception as exc:
            self._note(f"saving {name} failed: {exc}", error=True)
            return
        self._note(f"profile {name}: {count} line(s) changed (a new history version)")
