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

# supported PYTHON: exit 0 when PYTHON runs and is 3.11 or newer (what the library needs).
supported() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }

# ensure_venv DIR PYTHON: make DIR a virtualenv of PYTHON, unless it already is one of a supported
# Python. scripts/demo and scripts/test share .venv: neither deletes one the other made with
# another supported Python (it says so and uses it; remove DIR to rebuild it). Only a venv whose
# Python no longer runs or is older than 3.11 is replaced.
ensure_venv() {
    local dir=$1 python=$2 have want
    if [[ -e "$dir" ]] && ! supported "$dir/bin/python"; then
        echo "== replacing $dir: it was made by $("$dir/bin/python" -V 2>&1 || echo 'a Python that no longer runs'), and agent-session-store needs 3.11 or newer"
        rm -rf "$dir"
    fi
    if [[ ! -x "$dir/bin/python" ]]; then
        echo "== creating a virtualenv in $dir with $("$python" -V 2>&1)"
        "$python" -m venv "$dir"
        return
    fi
    have=$("$dir/bin/python" -V 2>&1 | cut -d' ' -f2 | cut -d. -f1,2)
    want=$("$python" -V 2>&1 | cut -d' ' -f2 | cut -d. -f1,2)
    if [[ "$have" != "$want" ]]; then
        echo "== using $dir as it is (Python $have; $python is $want): remove $dir to rebuild it with $want"
    fi
}
