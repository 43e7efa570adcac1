"""The cluster's schema migrations, applied in order by jobd.store.postgres.schema; appended
only, never edited once released (a database records how many it has applied)."""

from __future__ import annotations

from jobd.store.postgres.locks import LOCK_GROUP, LOCK_JOB

_STATUSES = "'PENDING', 'PROCESSING', 'COMPLETED', 'PARTIAL', 'FAILED', 'CANCELLED'"
_SOURCES = "'cron', 'api', 'manual', 'retry', 'catchup'"

MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE FUNCTION jobd_now_ms() RETURNS bigint LANGUAGE sql VOLATILE
        AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

    CREATE TABLE runs (
        id bigserial PRIMARY KEY,
        job text NOT NULL,
        status text NOT NULL CHECK (status IN ({_STATUSES})),
        progress double precision NOT NULL DEFAULT 0,
        message text,
        triggered_by text NOT NULL CHECK (triggered_by IN ({_SOURCES})),
        params text NOT NULL DEFAULT '{{}}',
        attempt integer NOT NULL DEFAULT 1,
        max_attempts integer NOT NULL DEFAULT 1,
        scheduled_for bigint,
        run_after bigint,
        created_at bigint NOT NULL,
        started_at bigint,
        finished_at bigint,
        duration_ms bigint,
        counts_total bigint,
        counts_success bigint NOT NULL DEFAULT 0,
        counts_failed bigint NOT NULL DEFAULT 0,
        counts_skipped bigint NOT NULL DEFAULT 0,
        result text,
        error text,
        exit_code integer,
        retry_of bigint,
        log_tail text NOT NULL DEFAULT '',
        updated_at bigint NOT NULL DEFAULT 0,
        node text,
        claim_token uuid,
        cancel_requested boolean NOT NULL DEFAULT false
    );
    CREATE INDEX runs_job ON runs (job, id);
    CREATE INDEX runs_status ON runs (status, id);
    CREATE INDEX runs_created ON runs (created_at);
    CREATE INDEX runs_trigger ON runs (triggered_by, id);
    CREATE INDEX runs_finished ON runs (finished_at) WHERE finished_at IS NOT NULL;
    -- The active runs by status and job: a job's next PENDING runs in order, its PROCESSING
    -- count, and the jobs that have PENDING runs are each a range of this one small index.
    CREATE INDEX runs_active ON runs (status, job, id) WHERE status IN ('PENDING', 'PROCESSING');
    CREATE INDEX runs_node ON runs (node) WHERE status = 'PROCESSING';

    CREATE TABLE job_state (
        job text PRIMARY KEY,
        paused boolean NOT NULL DEFAULT false,
        last_fire_at bigint,
        skipped_fires bigint NOT NULL DEFAULT 0,
        last_skipped_at bigint,
        consecutive_failures bigint NOT NULL DEFAULT 0,
        last_run_id bigint
    );
    CREATE TABLE idempotency (
        job text NOT NULL,
        key text NOT NULL,
        run_id bigint NOT NULL,
        created_at bigint NOT NULL,
        PRIMARY KEY (job, key)
    );
    -- One row per cron fire of the cluster, whichever node made it: the key is what makes a fire
    -- happen once, and the last row per job is where catch-up starts after downtime.
    CREATE TABLE fires (
        job text NOT NULL,
        scheduled_for bigint NOT NULL,
        node text NOT NULL,
        created_at bigint NOT NULL DEFAULT jobd_now_ms(),
        run_id bigint,
        skipped boolean NOT NULL DEFAULT false,
        PRIMARY KEY (job, scheduled_for)
    );
    CREATE TABLE nodes (
        name text PRIMARY KEY,
        host text NOT NULL,
        pid integer NOT NULL,
        started_at bigint NOT NULL,
        heartbeat_at bigint NOT NULL,
        dead_at bigint
    );
    -- Every committed change, in the transaction that made it. `xid` orders the feed: readers
    -- take rows of transactions older than every transaction still running, so a transaction
    -- that took its id early and commits late is read after, never skipped.
    CREATE TABLE events (
        id bigserial PRIMARY KEY,
        xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
        type text NOT NULL,
        run_id bigint,
        job text,
        status text,
        data text NOT NULL,
        created_at bigint NOT NULL DEFAULT jobd_now_ms()
    );
    CREATE INDEX events_feed ON events (xid, id);

    -- The claim: see jobd/store/postgres/runs.py, claim(). A function so that its last
    -- statement runs on a snapshot taken after the job locks are held. Busy slots are counted
    -- up to the job's limit only: a job without a real limit is not counted run by run.
    CREATE FUNCTION jobd_claim(p_node text, p_limit integer, p_now bigint, p_jobs text[], p_caps integer[])
    RETURNS SETOF runs LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
        v_jobs text[];
    BEGIN
        -- A node declared dead claims nothing more: its runs have been taken over.
        IF EXISTS (SELECT 1 FROM nodes WHERE name = p_node AND dead_at IS NOT NULL) THEN
            RETURN;
        END IF;
        -- The jobs to lock: those with a startable run and, as far as this snapshot knows, a
        -- free slot, oldest run first. A job at its limit must not hide the others behind it.
        -- The jobs with PENDING runs are found by skipping through the index from one job to
        -- the next, so the cost follows the number of such jobs, not the length of the queue.
        WITH RECURSIVE pending (job) AS (
            (SELECT r.job FROM runs r WHERE r.status = 'PENDING' ORDER BY r.job LIMIT 1)
            UNION ALL
            SELECT (
                SELECT r.job FROM runs r WHERE r.status = 'PENDING' AND r.job > pending.job ORDER BY r.job LIMIT 1
            )
            FROM pending WHERE pending.job IS NOT NULL
        ),
        ready AS (
            SELECT l.job, head.id AS first
            FROM pending JOIN unnest(p_jobs, p_caps) AS l (job, cap) ON l.job = pending.job
            CROSS JOIN LATERAL (
                SELECT q.id FROM runs q
                WHERE q.job = l.job AND q.status = 'PENDING' AND COALESCE(q.run_after, 0) <= p_now
                ORDER BY q.id LIMIT 1
            ) head
            WHERE l.cap > (
                SELECT count(*) FROM (SELECT FROM runs p WHERE p.job = l.job AND p.status = 'PROCESSING' LIMIT l.cap) busy
            )
        )
        SELECT array_agg(chosen.job) INTO v_jobs FROM (
            SELECT ready.job FROM ready ORDER BY ready.first LIMIT p_limit
        ) chosen;
        IF v_jobs IS NULL THEN
            RETURN;
        END IF;
        PERFORM pg_advisory_xact_lock({LOCK_JOB}, hashtext(j)) FROM unnest(v_jobs) j ORDER BY hashtext(j);
        RETURN QUERY
        WITH free AS (
            SELECT l.job, l.cap - (
                SELECT count(*) FROM (SELECT FROM runs p WHERE p.job = l.job AND p.status = 'PROCESSING' LIMIT l.cap) busy
            ) AS slots
            FROM unnest(p_jobs, p_caps) AS l (job, cap)
            WHERE l.job = ANY (v_jobs)
        ),
        candidates AS MATERIALIZED (
            SELECT r.id FROM runs r
            WHERE r.status = 'PENDING' AND r.id = ANY (ARRAY(
                SELECT head.id FROM free f CROSS JOIN LATERAL (
                    SELECT q.id FROM runs q
                    WHERE q.job = f.job AND q.status = 'PENDING' AND COALESCE(q.run_after, 0) <= p_now
                    ORDER BY q.id LIMIT least(greatest(f.slots, 0), p_limit)
                ) head
            ))
            ORDER BY r.id LIMIT p_limit
            FOR UPDATE SKIP LOCKED
        ),
        claimed AS (
            UPDATE runs SET status = 'PROCESSING', node = p_node, claim_token = gen_random_uuid(),
                started_at = p_now, updated_at = p_now
            FROM candidates
            WHERE runs.id = candidates.id AND runs.status = 'PENDING'
            RETURNING runs.*
        )
        SELECT * FROM claimed ORDER BY claimed.id;
    END
    $$;
    """,
    # Reads and retention: retention walks finished runs in (finished_at, id) order from a cursor;
    # expired idempotency keys are found by age.
    """
    CREATE INDEX runs_finished_id ON runs (finished_at, id) WHERE finished_at IS NOT NULL;
    DROP INDEX runs_finished;
    CREATE INDEX idempotency_created ON idempotency (created_at);
    """,
    # A claim announces the runs it made PROCESSING in its own statement, so the locks it holds
    # are released when that statement commits, not a round trip to the node later. The event's
    # data is models.status_update() of the claimed run (tests/test_postgres_runs.py holds the
    # two together).
    """
    CREATE FUNCTION jobd_iso_ms(ms bigint) RETURNS text LANGUAGE sql IMMUTABLE AS $$
        SELECT to_char(to_timestamp(ms / 1000) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.')
            || lpad((ms % 1000)::text, 3, '0') || 'Z'
    $$;
    CREATE FUNCTION jobd_status_update(r runs) RETURNS text LANGUAGE sql STABLE AS $$
        SELECT json_build_object(
            'run_id', r.id, 'job', r.job, 'status', r.status, 'progress', r.progress,
            'message', r.message,
            'counts', json_build_object(
                'total', r.counts_total, 'success', r.counts_success,
                'failed', r.counts_failed, 'skipped', r.counts_skipped
            ),
            'error', r.error, 'result', r.result::json, 'attempt', r.attempt,
            'updated_at', jobd_iso_ms(r.updated_at)
        )::text
    $$;
    CREATE FUNCTION jobd_claim_announced(p_node text, p_limit integer, p_now bigint, p_jobs text[], p_caps integer[])
    RETURNS SETOF runs LANGUAGE plpgsql VOLATILE AS $$
    BEGIN
        RETURN QUERY
        WITH claimed AS MATERIALIZED (
            SELECT c AS run FROM jobd_claim(p_node, p_limit, p_now, p_jobs, p_caps) c
        ),
        announced AS (
            INSERT INTO events (type, run_id, job, status, data)
            SELECT 'status_update', (c.run).id, (c.run).job, (c.run).status, jobd_status_update(c.run)
            FROM claimed c ORDER BY (c.run).id
        )
        SELECT (c.run).* FROM claimed c ORDER BY (c.run).id;
        IF FOUND THEN
            PERFORM pg_notify('jobd_events', '');
        END IF;
    END
    $$;
    """,
    # Nodes reach each other: where each one answers (its log files are on its own disk), and
    # the key the cluster signs stream tickets with, so that a ticket minted on one node opens
    # the stream on any (behind a proxy, or when a node hands a stream to another).
    """
    ALTER TABLE nodes ADD COLUMN url text;
    CREATE TABLE cluster_key (key bytea NOT NULL);
    INSERT INTO cluster_key (key)
        SELECT decode(md5(gen_random_uuid()::text) || md5(gen_random_uuid()::text), 'hex');
    """,
    # Why the job's last fire was skipped: 'overlap' (its policy refused it) or 'excluded' (its
    # calendars or active period left it out).
    "ALTER TABLE job_state ADD COLUMN last_skip_reason text",
    # Notifications (jobd/store/postgres/notifications.py): each committed with the change that
    # caused it, claimed by one node at a time under a lease; a job's snooze lives with its state.
    """
    CREATE TABLE notifications (
        id bigserial PRIMARY KEY,
        job text NOT NULL,
        event text NOT NULL,
        notifier text NOT NULL,
        run_id bigint,
        payload text NOT NULL,
        status text NOT NULL CHECK (status IN ('pending', 'delivered', 'failed', 'snoozed')),
        attempts integer NOT NULL DEFAULT 0,
        last_error text,
        created_at bigint NOT NULL,
        next_attempt_at bigint,
        delivered_at bigint,
        updated_at bigint NOT NULL,
        lease_until bigint
    );
    CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE status = 'pending';
    CREATE INDEX notifications_job ON notifications (job, id);
    CREATE INDEX notifications_updated ON notifications (updated_at);
    ALTER TABLE job_state ADD COLUMN snoozed_until bigint;
    """,
    # Chains: a run made by another run's end is triggered_by 'chain', knows its parent and its
    # depth in the chain, and an ended run keeps what its end made (see jobd/lifecycle/chains.py).
    # A status_update carries the run's parent_run_id (models.STATUS_UPDATE).
    f"""
    ALTER TABLE runs DROP CONSTRAINT runs_triggered_by_check;
    ALTER TABLE runs ADD CONSTRAINT runs_triggered_by_check CHECK (triggered_by IN ({_SOURCES}, 'chain'));
    ALTER TABLE runs ADD COLUMN parent_run_id bigint;
    ALTER TABLE runs ADD COLUMN chain_depth bigint NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN children text;
    CREATE INDEX runs_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL;
    CREATE OR REPLACE FUNCTION jobd_status_update(r runs) RETURNS text LANGUAGE sql STABLE AS $$
        SELECT json_build_object(
            'run_id', r.id, 'job', r.job, 'status', r.status, 'progress', r.progress,
            'message', r.message,
            'counts', json_build_object(
                'total', r.counts_total, 'success', r.counts_success,
                'failed', r.counts_failed, 'skipped', r.counts_skipped
            ),
            'error', r.error, 'result', r.result::json, 'attempt', r.attempt,
            'updated_at', jobd_iso_ms(r.updated_at), 'parent_run_id', r.parent_run_id
        )::text
    $$;
    """,
    # The audit log: one row per state-changing API call (see jobd.store.audit).
    """
    CREATE TABLE IF NOT EXISTS audit (
        id bigserial PRIMARY KEY,
        at bigint NOT NULL,
        token text,
        remote text,
        action text NOT NULL,
        job text,
        run_id bigint,
        target text NOT NULL,
        status integer NOT NULL,
        outcome text NOT NULL,
        detail text,
        request_id text
    );
    CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
    """,
    # Priorities and shared concurrency groups: a run's priority, the PENDING runs of a job by
    # priority, and the claim taking the best startable runs by effective priority (the key of
    # jobd/lifecycle/groups.py, order_key()) while holding each group, under its lock, to its limit.
    f"""
    ALTER TABLE runs ADD COLUMN priority integer NOT NULL DEFAULT 0;
    CREATE INDEX runs_pending_priority ON runs (job, priority DESC, id) WHERE status = 'PENDING';
    DROP FUNCTION jobd_claim_announced(text, integer, bigint, text[], integer[]);
    DROP FUNCTION jobd_claim(text, integer, bigint, text[], integer[]);

    CREATE FUNCTION jobd_order_key(p_priority integer, p_ready_at bigint, p_aging bigint)
    RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
        SELECT CASE WHEN p_aging <= 0 THEN -p_priority::bigint ELSE p_ready_at - p_priority * p_aging END
    $$;

    -- The first p_n startable runs of each priority of a job, found by skipping through the index
    -- from one priority to the next: a job's backlog is not sorted at each claim. PL/pgSQL, so
    -- that its statements' plans are kept for the session rather than made at every call.
    CREATE FUNCTION jobd_job_heads(p_job text, p_now bigint, p_n integer)
    RETURNS TABLE (head_id bigint, head_priority integer, head_ready_at bigint) LANGUAGE plpgsql STABLE AS $$
    DECLARE
        v_level integer;
        v_lowest integer;
    BEGIN
        SELECT max(r.priority), min(r.priority) INTO v_level, v_lowest
        FROM runs r WHERE r.status = 'PENDING' AND r.job = p_job;
        WHILE v_level IS NOT NULL LOOP
            RETURN QUERY
            SELECT r.id, r.priority, greatest(r.created_at, COALESCE(r.run_after, 0)) FROM runs r
            WHERE r.status = 'PENDING' AND r.job = p_job AND r.priority = v_level AND COALESCE(r.run_after, 0) <= p_now
            ORDER BY r.id LIMIT p_n;
            EXIT WHEN v_level = v_lowest;
            SELECT max(r.priority) INTO v_level FROM runs r
            WHERE r.status = 'PENDING' AND r.job = p_job AND r.priority < v_level;
        END LOOP;
    END
    $$;

    -- How many runs of a group's jobs are PROCESSING, counted up to its limit.
    CREATE FUNCTION jobd_group_busy(p_group text, p_cap integer, p_member_jobs text[], p_member_groups text[])
    RETURNS bigint LANGUAGE sql STABLE AS $$
        SELECT count(*) FROM (
            SELECT FROM runs p WHERE p.status = 'PROCESSING' AND p.job = ANY (ARRAY(
                SELECT m.job FROM unnest(p_member_jobs, p_member_groups) AS m (job, grp) WHERE m.grp = p_group
            ))
            LIMIT p_cap
        ) busy
    $$;

    -- The claim (jobd/store/postgres/runs.py, claim()): the jobs with a startable run and, as far
    -- as this snapshot knows, a free slot of their own and of each of their groups are locked
    -- (the best heads' when there are more than p_limit), then their groups; on a snapshot taken
    -- once the locks are held, the candidates are chosen in order of effective priority, each
    -- only if its job and every one of its groups still has a free slot (all of them, or none:
    -- nothing is held while waiting), and locked with FOR UPDATE SKIP LOCKED before the UPDATE.
    CREATE FUNCTION jobd_claim(
        p_node text, p_limit integer, p_now bigint, p_jobs text[], p_caps integer[],
        p_aging bigint, p_member_jobs text[], p_member_groups text[], p_groups text[], p_group_caps integer[]
    )
    RETURNS SETOF runs LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
        v_full text[] := '{{}}';
        v_jobs text[];
        v_job_free integer[];
        v_groups text[] := '{{}}';
        v_group_free integer[] := '{{}}';
        v_ids bigint[] := '{{}}';
        v_ok boolean;
        v_g integer;
        c record;
    BEGIN
        IF EXISTS (SELECT 1 FROM nodes WHERE name = p_node AND dead_at IS NOT NULL) THEN
            RETURN;
        END IF;
        IF cardinality(p_groups) > 0 THEN
            v_full := ARRAY(
                SELECT g.grp FROM unnest(p_groups, p_group_caps) AS g (grp, cap)
                WHERE jobd_group_busy(g.grp, g.cap, p_member_jobs, p_member_groups) >= g.cap
            );
        END IF;
        WITH RECURSIVE pending (job) AS (
            (SELECT r.job FROM runs r WHERE r.status = 'PENDING' ORDER BY r.job LIMIT 1)
            UNION ALL
            SELECT (
                SELECT r.job FROM runs r WHERE r.status = 'PENDING' AND r.job > pending.job ORDER BY r.job LIMIT 1
            )
            FROM pending WHERE pending.job IS NOT NULL
        ),
        ready AS (
            SELECT l.job
            FROM pending JOIN unnest(p_jobs, p_caps) AS l (job, cap) ON l.job = pending.job
            WHERE EXISTS (
                SELECT FROM runs q WHERE q.job = l.job AND q.status = 'PENDING' AND COALESCE(q.run_after, 0) <= p_now
            )
            AND l.cap > (
                SELECT count(*) FROM (SELECT FROM runs p WHERE p.job = l.job AND p.status = 'PROCESSING' LIMIT l.cap) busy
            )
            AND (cardinality(v_full) = 0 OR NOT EXISTS (
                SELECT 1 FROM unnest(p_member_jobs, p_member_groups) AS m (job, grp)
                WHERE m.job = l.job AND m.grp = ANY (v_full)
            ))
        )
        SELECT array_agg(ready.job) INTO v_jobs FROM ready;
        IF v_jobs IS NULL THEN
            RETURN;
        END IF;
        -- More such jobs than runs wanted: those with the best head, by the order of the runs.
        IF cardinality(v_jobs) > p_limit THEN
            v_jobs := ARRAY(
                SELECT v.job FROM unnest(v_jobs) AS v (job) CROSS JOIN LATERAL (
                    SELECT h.head_id AS id, jobd_order_key(h.head_priority, h.head_ready_at, p_aging) AS key
                    FROM jobd_job_heads(v.job, p_now, 1) h ORDER BY 2, 1 LIMIT 1
                ) head
                ORDER BY head.key, head.id LIMIT p_limit
            );
        END IF;
        PERFORM pg_advisory_xact_lock({LOCK_JOB}, hashtext(j)) FROM unnest(v_jobs) j ORDER BY hashtext(j);
        IF cardinality(p_groups) > 0 THEN
            v_groups := ARRAY(
                SELECT DISTINCT m.grp FROM unnest(p_member_jobs, p_member_groups) AS m (job, grp)
                WHERE m.job = ANY (v_jobs) AND m.grp = ANY (p_groups)
            );
            PERFORM pg_advisory_xact_lock({LOCK_GROUP}, hashtext(g)) FROM unnest(v_groups) g ORDER BY hashtext(g);
            v_group_free := ARRAY(
                SELECT g.cap - jobd_group_busy(g.grp, g.cap, p_member_jobs, p_member_groups)
                FROM unnest(v_groups) WITH ORDINALITY AS v (grp, i)
                JOIN unnest(p_groups, p_group_caps) AS g (grp, cap) ON g.grp = v.grp
                ORDER BY v.i
            );
        END IF;
        v_job_free := ARRAY(
            SELECT l.cap - (
                SELECT count(*) FROM (SELECT FROM runs p WHERE p.job = l.job AND p.status = 'PROCESSING' LIMIT l.cap) busy
            )
            FROM unnest(v_jobs) WITH ORDINALITY AS v (job, i) JOIN unnest(p_jobs, p_caps) AS l (job, cap) ON l.job = v.job
            ORDER BY v.i
        );
        FOR c IN
            SELECT h.head_id AS id, v.i AS job_index, ARRAY(
                SELECT array_position(v_groups, m.grp) FROM unnest(p_member_jobs, p_member_groups) AS m (job, grp)
                WHERE m.job = v.job AND m.grp = ANY (v_groups)
            ) AS group_indexes
            FROM unnest(v_jobs) WITH ORDINALITY AS v (job, i)
            CROSS JOIN LATERAL jobd_job_heads(v.job, p_now, least(greatest(v_job_free[v.i], 0), p_limit)::integer) h
            ORDER BY jobd_order_key(h.head_priority, h.head_ready_at, p_aging), h.head_id
        LOOP
            EXIT WHEN cardinality(v_ids) >= p_limit;
            CONTINUE WHEN v_job_free[c.job_index] <= 0;
            v_ok := true;
            FOREACH v_g IN ARRAY c.group_indexes LOOP
                v_ok := v_ok AND v_group_free[v_g] > 0;
            END LOOP;
            CONTINUE WHEN NOT v_ok;
            v_ids := v_ids || c.id;
            v_job_free[c.job_index] := v_job_free[c.job_index] - 1;
            FOREACH v_g IN ARRAY c.group_indexes LOOP
                v_group_free[v_g] := v_group_free[v_g] - 1;
            END LOOP;
        END LOOP;
        RETURN QUERY
        WITH candidates AS MATERIALIZED (
            SELECT r.id FROM runs r WHERE r.id = ANY (v_ids) AND r.status = 'PENDING'
            ORDER BY r.id FOR UPDATE SKIP LOCKED
        ),
        claimed AS (
            UPDATE runs SET status = 'PROCESSING', node = p_node, claim_token = gen_random_uuid(),
                started_at = p_now, updated_at = p_now
            FROM candidates
            WHERE runs.id = candidates.id AND runs.status = 'PENDING'
            RETURNING runs.*
        )
        SELECT * FROM claimed ORDER BY array_position(v_ids, claimed.id);
    END
    $$;

    CREATE FUNCTION jobd_claim_announced(
        p_node text, p_limit integer, p_now bigint, p_jobs text[], p_caps integer[],
        p_aging bigint, p_member_jobs text[], p_member_groups text[], p_groups text[], p_group_caps integer[]
    )
    RETURNS SETOF runs LANGUAGE plpgsql VOLATILE AS $$
    BEGIN
        RETURN QUERY
        WITH claimed AS MATERIALIZED (
            SELECT c AS run, row_number() OVER () AS n FROM jobd_claim(
                p_node, p_limit, p_now, p_jobs, p_caps, p_aging, p_member_jobs, p_member_groups, p_groups, p_group_caps
            ) c
        ),
        announced AS (
            INSERT INTO events (type, run_id, job, status, data)
            SELECT 'status_update', (c.run).id, (c.run).job, (c.run).status, jobd_status_update(c.run)
            FROM claimed c ORDER BY (c.run).id
        )
        SELECT (c.run).* FROM claimed c ORDER BY c.n;
        IF FOUND THEN
            PERFORM pg_notify('jobd_events', '');
        END IF;
    END
    $$;
    """,
    # Late and long-run alerts sent, so that each is sent once per cluster (jobd/watch.py).
    """
    CREATE TABLE IF NOT EXISTS alerts_sent (key text PRIMARY KEY, at bigint NOT NULL);
    CREATE INDEX IF NOT EXISTS alerts_sent_at ON alerts_sent (at);
    """,
)
