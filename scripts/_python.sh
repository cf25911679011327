# Sourced by scripts/test and scripts/test-lowest: find a CPython of a given minor version.
#
# find_python 3.13 prints the path of a working python3.13 or nothing. It looks on PATH, then
# in pyenv's versions (the machines this project runs on carry pyenv builds of 3.11 to 3.13;
# pyenv's shim for a version that is not the global one exits non-zero, hence the probe), then
# in /usr/bin. No registry these machines reach ships a CPython 3.13 for them (Debian 12 stops
# at 3.11; the PyPI and npm packages that claim one download it from elsewhere at install time).
find_python() {
    local minor=$1 candidate
    for candidate in "$(command -v "python$minor" 2>/dev/null || true)" \
        "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$minor".*/bin/"python$minor" \
        "/usr/bin/python$minor"; do
        if [[ -n "$candidate" && -x "$candidate" ]] && "$candidate" -c 'import ssl, sqlite3, venv' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
}
