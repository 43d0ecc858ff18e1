-- Prepared statements planned as PostgreSQL does by default again (plan_cache_mode = auto, undoing
-- 003's force_custom_plan for the database): a timeline page, an overview and every other read
-- is planned once per connection. Planning each call cost 0.2 ms of PostgreSQL's CPU a read, a
-- fifth of what the customer 360's calls cost it. The pages whose plan made without the customer
-- could sort a long timeline (a filter no index serves in event-time order) are planned for their
-- customer in their own transaction (interaction_service.store.planned_for_its_customer).
DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I RESET plan_cache_mode', current_database());
END
$$;
