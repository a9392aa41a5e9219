{#- The run id that mocra-elt passes with --vars, as a quoted SQL string literal. -#}
{% macro mocra_run_id_literal() -%}
    '{{ var("mocra_run_id") | string | replace("'", "''") }}'
{%- endmacro %}
