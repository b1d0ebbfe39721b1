-- Revocable sessions. A token carries the session epoch of its user at issue; a request is
-- accepted only while the user's epoch is still that number, and it acts with the role the
-- users row holds now (never the role written in the token). Changing a user's role, or
-- asking to end every session, moves the epoch on: every token issued before stops working.
ALTER TABLE users ADD COLUMN session_epoch bigint NOT NULL DEFAULT 0;
