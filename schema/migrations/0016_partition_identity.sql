-- Partitions created or attached later take their partitioned table's
-- REPLICA IDENTITY FULL.
--
-- Replica identity belongs to each table: CREATE TABLE ... PARTITION OF and
-- ATTACH PARTITION leave a new partition at DEFAULT. A publication with
-- publish_via_partition_root sends a partition's deletes under the root's
-- replica identity but with the old row the partition logged: under a FULL
-- root, a partition at DEFAULT would send its unlogged columns as NULL, and a
-- partition without a primary key would make the application's own UPDATE
-- and DELETE fail. walhook install creates an event trigger on this function
-- when it can (it needs a superuser); the function is harmless without it.
--
-- It acts only on partition trees whose root is FULL and published by some
-- publication with publish_via_partition_root. It never fails the DDL that
-- fired it: a partition it cannot alter gets a WARNING, and walhook check
-- and run name it until walhook install sets it.
CREATE FUNCTION walhook._partition_identity() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    part regclass;
BEGIN
    FOR part IN
        SELECT DISTINCT t.relid
        FROM pg_event_trigger_ddl_commands() cmd
        CROSS JOIN LATERAL pg_partition_root(cmd.objid) AS r(root)
        JOIN pg_class root ON root.oid = r.root
        CROSS JOIN LATERAL pg_partition_tree(r.root) t
        JOIN pg_class c ON c.oid = t.relid
        WHERE cmd.classid = 'pg_class'::regclass
          AND root.relkind = 'p' AND root.relreplident = 'f'
          AND c.relkind IN ('r', 'p') AND c.relreplident <> 'f'
          AND EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                      WHERE pr.prrelid = root.oid AND p.pubviaroot)
    LOOP
        BEGIN
            EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', part);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'walhook: could not set REPLICA IDENTITY FULL on partition %: %', part, SQLERRM
                USING HINT = 'Run walhook install, or ALTER TABLE ... REPLICA IDENTITY FULL as its owner.';
        END;
    END LOOP;
END $$;

REVOKE ALL ON FUNCTION walhook._partition_identity() FROM PUBLIC;
