-- API keys of client apps. A key is shown once as `crm_<key_id>_<secret>`; only the sha256 of the
-- secret is kept. A revoked key stays listed (who had access, until when) but no longer works.
CREATE TABLE api_keys (
    key_id     text        PRIMARY KEY,
    name       text        NOT NULL,
    key_hash   text        NOT NULL,
    scopes     text[]      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
