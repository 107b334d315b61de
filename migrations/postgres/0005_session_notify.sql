-- Every change to a user or a session is announced on the channel monassurance_auth with
-- the user's id, at commit, whoever makes it (an API replica, a CLI, an operator in psql):
-- each API drops the sessions it cached for that user (common/src/db/session_cache.rs).
-- Ids never change, so OLD names the user for both UPDATE and DELETE. SQLite has no
-- counterpart: the embedded API forgets its own changes, and AUTH_CACHE_SECONDS bounds
-- what another process (create-admin) changes.

CREATE FUNCTION app_notify_session_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'users' THEN
        PERFORM pg_notify('monassurance_auth', OLD.id::text);
    ELSE
        PERFORM pg_notify('monassurance_auth', OLD.user_id::text);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER users_notify_session_change
AFTER UPDATE OR DELETE ON users
FOR EACH ROW EXECUTE FUNCTION app_notify_session_change();

CREATE TRIGGER auth_sessions_notify_session_change
AFTER UPDATE OR DELETE ON auth_sessions
FOR EACH ROW EXECUTE FUNCTION app_notify_session_change();
