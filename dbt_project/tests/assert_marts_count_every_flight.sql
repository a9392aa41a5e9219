-- Both marts must count every scheduled flight exactly once.
with flights as (

    select count(*) as flights_scheduled from {{ ref('stg_flights') }}

),

daily_totals as (

    select sum(flights_scheduled) as flights_scheduled
    from {{ ref('mart_daily_departure_delay') }}

),

weather_totals as (

    select sum(flights_scheduled) as flights_scheduled
    from {{ ref('mart_delay_weather') }}

),

mismatches as (

    select
        flights.flights_scheduled as staged,
        daily_totals.flights_scheduled as in_daily_mart,
        weather_totals.flights_scheduled as in_weather_mart
    from flights
    cross join daily_totals
    cross join weather_totals
    where
        daily_totals.flights_scheduled <> flights.flights_scheduled
        or weather_totals.flights_scheduled <> flights.flights_scheduled

)

select * from mismatches
