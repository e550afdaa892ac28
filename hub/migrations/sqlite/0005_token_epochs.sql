-- A user's tokens are valid only while their epoch is the user's: a
-- password change or reset, a role change or disabling bumps it, which
-- revokes every token issued before at once.
ALTER TABLE users ADD COLUMN token_epoch BIGINT NOT NULL DEFAULT 0;
