#!/usr/bin/env bash
# Build, validate, sign and push a node image, then verify it as a node would.
#
# The one command sequence that docs/ci/github-actions.yml and docs/ci/gitlab-ci.yml run
# (and that tests/integration/test_ci_pipeline.py runs against a local TLS registry with auth).
#
# Inputs (environment):
#   REGISTRY            registry host[:port], e.g. registry.example.com
#   IMAGE               repository path in it, e.g. fleet/node
#   TAG                 tag to build and push, e.g. the commit SHA
#   REGISTRY_USER       registry user
#   REGISTRY_PASSWORD   registry password or token (secret; piped to login, never on argv)
#   NESTBUILD_PASSWORD  passphrase of the signing key (secret; read by nestbuild push)
#   SIGNING_KEY_FILE    path of the cosign private key, written from a CI secret (0600)
# Optional:
#   PUBLIC_KEY_FILE            public key to verify with (default: cosign.pub)
#   CONTEXT                    build context (default: .)
#   OUT_DIR                    where build.json, push.json and digest.txt go (default: nestbuild-out)
#   NESTBUILD_BUILD_FLAGS      extra flags for build, e.g. "--build-arg BASE=quay.io/fedora/fedora-bootc:41"
#   NESTBUILD_REGISTRY_FLAGS   extra flags for login/build/push/verify, e.g. "--cert-dir DIR --tls-verify true"
#                              (both split on whitespace: no spaces inside one value); build
#                              uses them (and the login's credentials) to pull a base that is
#                              not on the runner yet
#   NESTBUILD                  the nestbuild command (default: nestbuild from PATH)
#   REGISTRY_AUTH_FILE         where login stores the credentials (default: a private temp
#                              file, deleted on exit)
#
# Exit status: that of the first step that fails (0 all done; 1 build/validation failed or
# signature not verified; 2 unusable input, missing tool, registry or credentials problem).
# Never add `set -x` here: it would print the secrets.
set -euo pipefail

# A missing input is a broken job: exit 2, as nestbuild does for unusable input (bash's own
# ${VAR:?} would exit 127). Only names are printed, never values.
require() {
    local name
    for name in "$@"; do
        if [[ -z "${!name:-}" ]]; then
            echo "pipeline.sh: $name is not set (see docs/ci/README.md)" >&2
            exit 2
        fi
    done
}
require REGISTRY IMAGE TAG REGISTRY_USER REGISTRY_PASSWORD NESTBUILD_PASSWORD SIGNING_KEY_FILE
PUBLIC_KEY_FILE="${PUBLIC_KEY_FILE:-cosign.pub}"
CONTEXT="${CONTEXT:-.}"
OUT_DIR="${OUT_DIR:-nestbuild-out}"
NESTBUILD="${NESTBUILD:-nestbuild}"

read -r -a build_flags <<<"${NESTBUILD_BUILD_FLAGS:-}"
read -r -a registry_flags <<<"${NESTBUILD_REGISTRY_FLAGS:-}"

for f in "$SIGNING_KEY_FILE" "$PUBLIC_KEY_FILE"; do
    [[ -s "$f" ]] || { echo "pipeline.sh: $f is missing or empty" >&2; exit 2; }
done

# Credentials go to a private file that does not outlive the job, unless one was chosen.
if [[ -z "${REGISTRY_AUTH_FILE:-}" ]]; then
    REGISTRY_AUTH_FILE="$(mktemp -d)/auth.json"
    trap 'rm -rf "$(dirname "$REGISTRY_AUTH_FILE")"' EXIT
fi
export REGISTRY_AUTH_FILE

mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR/build.json" "$OUT_DIR/push.json" "$OUT_DIR/digest.txt"  # no stale results
local_image="localhost/$IMAGE:$TAG"
remote="$REGISTRY/$IMAGE"

echo "== login $REGISTRY as $REGISTRY_USER"
# printf is a shell builtin: the password reaches nestbuild's stdin without ever being an
# argument of any process.
printf '%s\n' "$REGISTRY_PASSWORD" |
    "$NESTBUILD" login "$REGISTRY" -u "$REGISTRY_USER" --password-stdin "${registry_flags[@]}"
unset REGISTRY_PASSWORD

echo "== build $local_image from $CONTEXT (and validate it)"
# A base that is not on the runner is pulled (--pull=missing) with the login's credentials.
"$NESTBUILD" build -t "$local_image" --format json "${registry_flags[@]}" "${build_flags[@]}" \
    "$CONTEXT" | tee "$OUT_DIR/build.json"

echo "== push $remote:$TAG (validate, sign, attest)"
"$NESTBUILD" push "$local_image" "$remote:$TAG" --sign-key "$SIGNING_KEY_FILE" \
    --digestfile "$OUT_DIR/digest.txt" --format json "${registry_flags[@]}" \
    | tee "$OUT_DIR/push.json"
unset NESTBUILD_PASSWORD COSIGN_PASSWORD

digest="$(cat "$OUT_DIR/digest.txt")"
echo "== verify $remote@$digest with $PUBLIC_KEY_FILE"
"$NESTBUILD" verify "docker://$remote@$digest" --key "$PUBLIC_KEY_FILE" "${registry_flags[@]}"

echo "$remote@$digest"
