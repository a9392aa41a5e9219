{{ config(tags=["flight_events"]) }}

{#- The events table exists only once the Kafka pipeline has loaded it. Until then this model is
    empty, so building the whole project by hand still works. -#}
{%- set events_source = source('raw_flight_events', 'flight_events') -%}
{%- set events_table = adapter.get_relation(
    database=events_source.database,
    schema=events_source.schema,
    identifier=events_source.identifier,
) -%}

{% if events_table is none %}

select
    cast(null as varchar) as event_id,
    cast(null as bigint) as flight_id,
    cast(null as varchar) as event_type,
    cast(null as timestamp with time zone) as event_at,
    cast(null as varchar) as carrier_code,
    cast(null as integer) as flight_number,
    cast(null as varchar) as origin,
    cast(null as varchar) as destination,
    cast(null as integer) as reported_delay_minutes,
    cast(null as bigint) as kafka_partition,
    cast(null as bigint) as kafka_offset,
    cast(null as timestamp with time zone) as produced_at,
    cast(null as varchar) as loaded_by_run_id
where 1 = 0

{% else %}

with source_events as (

    select * from {{ events_source }}

),

renamed as (

    select
        event_id,
        cast(flight_id as bigint) as flight_id,
        event_type,
        event_at,
        carrier as carrier_code,
        cast(flight_number as integer) as flight_number,
        origin,
        destination,
        cast(delay_minutes as integer) as reported_delay_minutes,
        _kafka_partition as kafka_partition,
        _kafka_offset as kafka_offset,
        _kafka_timestamp as produced_at,
        _mocra_run_id as loaded_by_run_id
    from source_events

)

select * from renamed

{% endif %}
