-- The event outbox of the plugin database (owned by svc_plugins). Each plugin's role
-- inserts, reads and marks its own events only: row-level security matches the row's
-- plugin to the role's name (svp_<id>); the owner, which relays nothing, is exempt.
CREATE TABLE public._sv_event_outbox (
    seq             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        text   NOT NULL UNIQUE,
    plugin          text   NOT NULL,
    topic           text   NOT NULL,
    payload         text   NOT NULL,
    created_at_ms   bigint NOT NULL,
    delivered_at_ms bigint
);
CREATE INDEX _sv_event_outbox_pending ON public._sv_event_outbox (plugin, delivered_at_ms, seq);
ALTER TABLE public._sv_event_outbox ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_events ON public._sv_event_outbox
    USING (plugin = substr(current_user, 5))
    WITH CHECK (plugin = substr(current_user, 5));
REVOKE ALL ON public._sv_event_outbox FROM PUBLIC;

-- The id a sequence last gave this session (a plugin statement's last_insert_id), or 0
-- when none has yet: lastval() itself fails then, and a failure would undo the insert.
CREATE FUNCTION public.sv_lastval() RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    RETURN lastval();
EXCEPTION WHEN object_not_in_prerequisite_state THEN
    RETURN 0;
END $$;
REVOKE ALL ON FUNCTION public.sv_lastval() FROM PUBLIC;
