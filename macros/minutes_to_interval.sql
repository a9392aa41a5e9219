{% macro minutes_to_interval(minutes) -%}
    ({{ minutes }}) * interval '1 minute'
{%- endmacro %}
