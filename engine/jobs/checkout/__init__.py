"""A diffusion-pipe checkout that dpdeck installs, updates and reports on (`dpdeck backend ...`).

One job per module: `steps` (the step table, a failure naming its step, running one command), `state` (the
install record and the progress file the deck reads), `gitops` (clone, fetch, checkout, submodules, status),
`venv` (a venv over the system torch), `requirements` (upstream's requirements.txt without torch),
`verify` (train.py's top-level imports in that venv), `configure` (the settings switch) and `pipeline`
(install and update, built from those). `status` answers `dpdeck backend status`. See docs/backend.md.
"""
