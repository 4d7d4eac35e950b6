#!/usr/bin/env bash
# Build every no_std library crate for the bare-metal targets with Debian's rustc, which ships
# the library sources that -Zbuild-std needs (rustup has no bare-metal targets here).
# Needs: apt-get install rustc-web cargo-web rust-web-src lld (see .ci/run).
# Usage: scripts/build-bare-metal.sh [crate ...]   (default: every library crate + the facade)
set -euo pipefail
cd "$(dirname "$0")/.."

crates=("$@")
if [ ${#crates[@]} -eq 0 ]; then
  crates=(mmkit)
  for toml in crates/*/Cargo.toml; do
    crates+=("$(sed -n 's/^name = "\(.*\)"/\1/p' "$toml" | head -n1)")
  done
fi

export PATH=/usr/bin:$PATH RUSTC_BOOTSTRAP=1 RUSTFLAGS="-C linker=ld.lld"
# A separate target dir: Debian's rustc must not share artifacts with rustup's.
export CARGO_TARGET_DIR="${BARE_METAL_TARGET_DIR:-target/bare-metal}"
for target in x86_64-unknown-none aarch64-unknown-none; do
  args=()
  for c in "${crates[@]}"; do args+=(-p "$c"); done
  echo "== bare-metal build for $target: ${crates[*]}"
  /usr/bin/cargo build --release -Zbuild-std=core,alloc --target "$target" "${args[@]}"
done
