# Stamp-and-cache for the test tools built from Go modules (sourced by
# tools/controlplane/build.sh, tools/helm/build.sh, tools/coredns/build.sh and
# tools/kstatus/build.sh).
#
# A build is named by a stamp: a digest of everything that decides its output
# (the module files, the build script, the Go version). The binaries go to
# $out (.devcluster/bin) with the stamp beside them in $out/.<name>.stamp, and
# a copy is kept per stamp in a cache outside the checkout
# (~/.cache/analysis-operator/<name>/<stamp>/), so that a fresh clone on the
# same machine (CI) copies them instead of building. One stamp is kept per
# name; older ones are dropped.
#
#   stamped_init NAME OUT CACHE STAMP TOOL...   set what the other functions use
#   stamped_ready || ...                         returns 0 (and says so) if $out is current or was
#                                                restored from the cache
#   stamped_save                                 after the build put every tool in $out
#   stamped_logged LOG CMD...                    run CMD with its output (go's "downloading" lines and all)
#                                                in LOG only; on failure, its last lines and the exit code
#
# It deliberately builds nothing itself: each script knows its own go command.

stamped_init() {
  _st_name=$1 _st_out=$2 _st_cache=$3 _st_stamp=$4
  shift 4
  _st_tools=("$@")
}

_stamped_have_all() {
  local t
  for t in "${_st_tools[@]}"; do [ -x "$1/$t" ] || return 1; done
}

stamped_ready() {
  local file="$_st_out/.$_st_name.stamp" t
  if [ -f "$file" ] && [ "$(cat "$file")" = "$_st_stamp" ] && _stamped_have_all "$_st_out"; then
    echo "$_st_name up to date in $_st_out"
    return 0
  fi
  if _stamped_have_all "$_st_cache/$_st_stamp"; then
    mkdir -p "$_st_out"
    for t in "${_st_tools[@]}"; do cp -f "$_st_cache/$_st_stamp/$t" "$_st_out/$t"; done
    echo "$_st_stamp" > "$file"
    echo "$_st_name copied from the build cache $_st_cache/$_st_stamp"
    return 0
  fi
  return 1
}

stamped_save() {
  local t tmpc
  echo "$_st_stamp" > "$_st_out/.$_st_name.stamp"
  mkdir -p "$_st_cache" && rm -rf "${_st_cache:?}"/.tmp.*
  tmpc=$(mktemp -d "$_st_cache/.tmp.XXXXXX")
  for t in "${_st_tools[@]}"; do cp "$_st_out/$t" "$tmpc/$t"; done
  find "$_st_cache" -mindepth 1 -maxdepth 1 -type d ! -name "$(basename "$tmpc")" -exec rm -rf {} +
  mv "$tmpc" "$_st_cache/$_st_stamp"
}

# The Go minor version, or a clear exit when go is missing or older than $2 (for $1's message).
stamped_require_go() {
  local who=$1 need=$2 gov minor
  command -v go >/dev/null || { echo "$who: go is not on PATH (Go >= 1.$need is needed)" >&2; exit 1; }
  gov=$(go env GOVERSION)
  minor=$(echo "$gov" | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
  if [ -z "$minor" ] || [ "$minor" -lt "$need" ]; then
    echo "$who: $gov is too old; Go >= 1.$need is needed" >&2
    exit 1
  fi
  echo "$gov"
}

# Run "$@" with its output in the file $1 only; on failure show its tail and fail with its exit code.
stamped_logged() {
  local log=$1 code=0
  shift
  mkdir -p "$(dirname "$log")"
  "$@" > "$log" 2>&1 || code=$?
  if [ "$code" -ne 0 ]; then
    echo "failed (exit $code): $*; the last lines of $log:" >&2
    tail -n 40 "$log" >&2
    return "$code"
  fi
}
