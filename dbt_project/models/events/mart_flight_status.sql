{{ config(materialized="table", tags=["flight_events"]) }}

with flights as (

    select * from {{ ref('stg_flights') }}

),

events as (

    select * from {{ ref('stg_flight_events') }}

),

event_times as (

    select
        flight_id,
        min(event_at) filter (where event_type = 'departed') as departed_at,
        min(event_at) filter (where event_type = 'arrived') as arrived_at,
        min(event_at) filter (where event_type = 'cancelled') as cancelled_at,
        max(reported_delay_minutes) as reported_delay_minutes,
        count(*) as events_received,
        max(produced_at) as last_produced_at
    from events
    group by flight_id

),

flight_status as (

    select
        flights.flight_id,
        flights.flight_date,
        flights.carrier_code,
        flights.flight_number,
        flights.origin,
        flights.destination,
        flights.scheduled_departure_local,
        case
            when event_times.cancelled_at is not null then 'cancelled'
            when event_times.arrived_at is not null then 'arrived'
            else 'departed'
        end as status,
        event_times.departed_at,
        event_times.arrived_at,
        event_times.cancelled_at,
        event_times.reported_delay_minutes,
        flights.departure_delay_minutes,
        event_times.events_received,
        event_times.last_produced_at,
        {{ mocra_run_id_literal() }} as _mocra_run_id
    from event_times
    inner join flights
        on event_times.flight_id = flights.flight_id

)

select * from flight_status
