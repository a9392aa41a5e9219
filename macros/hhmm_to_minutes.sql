{#- Clock times stored as numbers (517 = 05:17, 2400 = midnight at the end of the day). -#}
{% macro hhmm_to_minutes(column) -%}
    cast(
        floor(cast({{ column }} as integer) / 100) * 60 + cast({{ column }} as integer) % 100
        as integer
    )
{%- endmacro %}
