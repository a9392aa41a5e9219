{#- Cast first, so that integer counts divide as floating point on Postgres too. -#}
{% macro safe_divide(numerator, denominator) -%}
    cast({{ numerator }} as double precision) / nullif({{ denominator }}, 0)
{%- endmacro %}
