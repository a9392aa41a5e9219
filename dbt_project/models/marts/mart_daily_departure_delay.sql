with flights as (

    select * from {{ ref('stg_flights') }}

),

departed_flights as (

    select * from {{ ref('int_departed_flights') }}

),

airlines as (

    select * from {{ ref('stg_airlines') }}

),

scheduled_per_day as (

    select
        flight_date,
        carrier_code,
        origin,
        count(*) as flights_scheduled,
        count(*) filter (where is_cancelled) as flights_cancelled
    from flights
    group by flight_date, carrier_code, origin

),

departed_per_day as (

    select
        flight_date,
        carrier_code,
        origin,
        count(*) as flights_departed,
        count(*) filter (where is_delayed_over_15_minutes) as flights_delayed_over_15_minutes,
        avg(departure_delay_minutes) as avg_departure_delay_minutes,
        percentile_cont(0.5) within group (order by departure_delay_minutes)
            as median_departure_delay_minutes,
        max(departure_delay_minutes) as max_departure_delay_minutes
    from departed_flights
    group by flight_date, carrier_code, origin

),

daily_delay as (

    select
        scheduled_per_day.flight_date,
        scheduled_per_day.carrier_code,
        airlines.carrier_name,
        scheduled_per_day.origin,
        scheduled_per_day.flights_scheduled,
        coalesce(departed_per_day.flights_departed, 0) as flights_departed,
        scheduled_per_day.flights_cancelled,
        {{ safe_divide(
            'scheduled_per_day.flights_cancelled',
            'scheduled_per_day.flights_scheduled'
        ) }} as cancelled_share,
        departed_per_day.avg_departure_delay_minutes,
        departed_per_day.median_departure_delay_minutes,
        departed_per_day.max_departure_delay_minutes,
        coalesce(departed_per_day.flights_delayed_over_15_minutes, 0)
            as flights_delayed_over_15_minutes,
        {{ safe_divide(
            'departed_per_day.flights_delayed_over_15_minutes',
            'departed_per_day.flights_departed'
        ) }} as delayed_over_15_minutes_share,
        {{ mocra_run_id_literal() }} as _mocra_run_id
    from scheduled_per_day
    left join departed_per_day
        on scheduled_per_day.flight_date = departed_per_day.flight_date
        and scheduled_per_day.carrier_code = departed_per_day.carrier_code
        and scheduled_per_day.origin = departed_per_day.origin
    left join airlines
        on scheduled_per_day.carrier_code = airlines.carrier_code

)

select * from daily_delay
