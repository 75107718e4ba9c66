-- The mirror's bookkeeping in the plugin database (owned by svc_plugins, which alone
-- writes the mirror): the watermark (last core outbox sequence number applied) and the
-- projection each mirror table in schema `core` was built with. Plugins read neither.
CREATE TABLE public._sv_mirror_state (key text PRIMARY KEY, value bigint NOT NULL);
CREATE TABLE public._sv_mirror_slices (slice text PRIMARY KEY, spec text NOT NULL);
REVOKE ALL ON public._sv_mirror_state, public._sv_mirror_slices FROM PUBLIC;
