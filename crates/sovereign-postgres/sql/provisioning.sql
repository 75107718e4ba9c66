-- Provisioning a plugin's role, schema and grants without handing the platform a
-- superuser: these functions run as the administrator who applied the plan (SECURITY
-- DEFINER) and only the plugin store's role ({plugins_role}) may call them. They touch
-- roles named svp_<id> and schemas named <id> only, for ids that pass the same check
-- as plugin.json's; every name is quoted with format(%I), every value with %L.
CREATE SCHEMA IF NOT EXISTS sv_admin;
REVOKE ALL ON SCHEMA sv_admin FROM PUBLIC;
GRANT USAGE ON SCHEMA sv_admin TO "{plugins_role}";

CREATE OR REPLACE FUNCTION sv_admin.plugin_role(id text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF id IS NULL OR id !~ '^[a-z][a-z0-9_]{0,31}$' OR id ~ '__' OR id ~ '_$' THEN
        RAISE EXCEPTION 'invalid plugin id %', quote_literal(coalesce(id, 'NULL'))
            USING ERRCODE = '22023',
                  HINT = 'use 1 to 32 lowercase letters, digits and single underscores, starting with a letter';
    END IF;
    IF id IN ('core', 'public', 'sv_admin', 'information_schema') OR id LIKE 'pg%' THEN
        RAISE EXCEPTION 'plugin id % is reserved', id USING ERRCODE = '22023';
    END IF;
    RETURN 'svp_' || id;
END $fn$;

CREATE OR REPLACE FUNCTION sv_admin.create_plugin_role(
    id text, password text, connection_limit integer, statement_ms integer
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    role text := sv_admin.plugin_role(id);
BEGIN
    IF password IS NULL OR length(password) < 16 THEN
        RAISE EXCEPTION 'a plugin role''s password must have at least 16 characters'
            USING ERRCODE = '22023';
    END IF;
    IF connection_limit IS NULL OR connection_limit NOT BETWEEN 1 AND 1000
       OR statement_ms IS NULL OR statement_ms NOT BETWEEN 1 AND 3600000 THEN
        RAISE EXCEPTION 'connection limit % or statement timeout % ms out of range',
            connection_limit, statement_ms USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role) THEN
        EXECUTE format('CREATE ROLE %I', role);
    END IF;
    EXECUTE format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION '
                   'NOBYPASSRLS NOINHERIT CONNECTION LIMIT %s PASSWORD %L',
                   role, connection_limit, password);
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), role);
    EXECUTE format('ALTER ROLE %I IN DATABASE %I SET search_path = %I, core',
                   role, current_database(), id);
    EXECUTE format('ALTER ROLE %I SET statement_timeout = %L', role, statement_ms || 'ms');
    EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I AUTHORIZATION %I', id, role);
    EXECUTE format('ALTER SCHEMA %I OWNER TO %I', id, role);
    EXECUTE format('REVOKE ALL ON SCHEMA %I FROM PUBLIC', id);
    -- The plugin store's owner reads the plugin's outbox and runs purges; it may act as
    -- the plugin's role (SET ROLE, never inherited: NOINHERIT) to back up and restore the
    -- plugin's schema. The plugin's role gains nothing from this.
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', id, '{plugins_role}');
    EXECUTE format('GRANT %I TO %I', role, '{plugins_role}');
    -- Its own events (row-level security) and its last insert id; nothing else of public.
    EXECUTE format('GRANT USAGE ON SCHEMA public TO %I', role);
    IF to_regclass('public._sv_event_outbox') IS NOT NULL THEN
        EXECUTE format('GRANT SELECT, INSERT, DELETE, UPDATE (delivered_at_ms) '
                       'ON public._sv_event_outbox TO %I', role);
    END IF;
    IF to_regprocedure('public.sv_lastval()') IS NOT NULL THEN
        EXECUTE format('GRANT EXECUTE ON FUNCTION public.sv_lastval() TO %I', role);
    END IF;
END $fn$;

-- Exactly the approved columns of the mirror tables built so far (none: no USAGE on
-- the mirror schema at all).
CREATE OR REPLACE FUNCTION sv_admin.grant_mirrors(id text, grants text[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    role text := sv_admin.plugin_role(id);
    grant_pair text;
    slice text;
    columns text;
BEGIN
    EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA core FROM %I', role);
    IF coalesce(cardinality(grants), 0) = 0 THEN
        EXECUTE format('REVOKE ALL ON SCHEMA core FROM %I', role);
        RETURN;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA core TO %I', role);
    FOREACH grant_pair IN ARRAY grants LOOP
        IF grant_pair !~ '^[a-z_][a-z0-9_]{0,56}\.[a-z_][a-z0-9_]{0,62}$' THEN
            RAISE EXCEPTION 'invalid mirror grant % (expected slice.column)',
                quote_literal(grant_pair) USING ERRCODE = '22023';
        END IF;
    END LOOP;
    FOR slice, columns IN
        SELECT split_part(g, '.', 1),
               string_agg(quote_ident(split_part(g, '.', 2)), ', ' ORDER BY g)
        FROM unnest(grants) AS g GROUP BY 1
    LOOP
        IF to_regclass(format('core.%I', 'core__' || slice)) IS NOT NULL THEN
            EXECUTE format('GRANT SELECT (%s) ON core.%I TO %I', columns, 'core__' || slice, role);
        END IF;
    END LOOP;
END $fn$;

-- Removes a plugin's role with its schema (its data), its events and its grants.
CREATE OR REPLACE FUNCTION sv_admin.drop_plugin_role(id text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    role text := sv_admin.plugin_role(id);
BEGIN
    EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', id);
    IF to_regclass('public._sv_event_outbox') IS NOT NULL THEN
        DELETE FROM public._sv_event_outbox WHERE plugin = id;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = role) THEN
        EXECUTE format('DROP OWNED BY %I', role);
        EXECUTE format('REVOKE ALL ON DATABASE %I FROM %I', current_database(), role);
        EXECUTE format('DROP ROLE %I', role);
    END IF;
END $fn$;

-- Replaces a plugin's schema by an empty one it owns (a restore then fills it as the
-- plugin's role); its role and grants stay.
CREATE OR REPLACE FUNCTION sv_admin.reset_plugin_schema(id text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    role text := sv_admin.plugin_role(id);
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role) THEN
        RAISE EXCEPTION 'plugin % has no role %', id, role USING ERRCODE = '42704';
    END IF;
    EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', id);
    EXECUTE format('CREATE SCHEMA %I AUTHORIZATION %I', id, role);
    EXECUTE format('REVOKE ALL ON SCHEMA %I FROM PUBLIC', id);
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', id, '{plugins_role}');
END $fn$;

REVOKE ALL ON FUNCTION sv_admin.plugin_role(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION sv_admin.reset_plugin_schema(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION sv_admin.create_plugin_role(text, text, integer, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION sv_admin.grant_mirrors(text, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION sv_admin.drop_plugin_role(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sv_admin.create_plugin_role(text, text, integer, integer) TO "{plugins_role}";
GRANT EXECUTE ON FUNCTION sv_admin.grant_mirrors(text, text[]) TO "{plugins_role}";
GRANT EXECUTE ON FUNCTION sv_admin.drop_plugin_role(text) TO "{plugins_role}";
GRANT EXECUTE ON FUNCTION sv_admin.reset_plugin_schema(text) TO "{plugins_role}";
