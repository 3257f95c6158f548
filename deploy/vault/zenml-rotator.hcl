# The Vault (or OpenBao) policy zenml-rotator needs, and no more. This example keeps the keys under
# "zenml/" of the KV v2 mount "secret"; claims (one document per key, written only with
# check-and-set, never deleted) live under "zenml-rotator/claims/" of the same mount, the default
# of `[stores.NAME] claims`. Change "secret", "zenml/" and the claims prefix to match your policy
# file. The test suite grants its tokens exactly this policy (prefix substituted).
#
# The token also needs what Vault's `default` policy grants: `sys/capabilities-self` (pre-flight
# asks it) and `auth/token/lookup-self` / `renew-self`.

path "secret/data/zenml/*" {
  capabilities = ["create", "update", "read"]
}

# patch is optional: with it the rotation record goes into custom_metadata as one merge patch;
# without it (policies written before 2026-12-03) the rotator reads the metadata and writes it whole.
path "secret/metadata/zenml/*" {
  capabilities = ["update", "read", "patch"]
}

# Only with retire_previous = true: the previous value is destroyed once its window is over.
path "secret/destroy/zenml/*" {
  capabilities = ["update"]
}

# Claims on the keys above: `<claims>/<path>`.
path "secret/data/zenml-rotator/claims/zenml/*" {
  capabilities = ["create", "update", "read"]
}
