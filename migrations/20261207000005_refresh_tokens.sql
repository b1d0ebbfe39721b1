-- Sessions with rotating refresh tokens.
--
-- A login (or registration) opens a session: a row here, and a first refresh token. Access
-- tokens are short-lived JWTs that name their session (`sid`); a request is accepted only while
-- the session is open (and the user's session epoch unchanged). Refreshing spends the refresh
-- token presented and gives a new one; presenting a spent one again is taken as theft (someone
-- else refreshed with it first) and ends the whole session, on both sides. Refresh tokens are
-- stored as SHA-256 hashes of their secret part, never in the clear.
CREATE TABLE sessions (
    id             uuid        PRIMARY KEY,
    user_id        uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- The user's session epoch at login: a role change or "end every session" moves the
    -- user's epoch on, and a session from an older epoch refreshes no more.
    epoch          bigint      NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- The session ends at this instant at the latest, however often it is refreshed.
    expires_at     timestamptz NOT NULL,
    revoked_at     timestamptz,
    revoked_reason text
);
CREATE INDEX sessions_open_by_user_idx ON sessions (user_id) WHERE revoked_at IS NULL;

CREATE TABLE refresh_tokens (
    id          uuid        PRIMARY KEY,
    session_id  uuid        NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    secret_hash bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Set when the token was exchanged for the next one: presenting it again is reuse.
    used_at     timestamptz
);
CREATE INDEX refresh_tokens_session_idx ON refresh_tokens (session_id);
