{% test unique_combination_of_columns(model, combination_of_columns) %}
{%- set columns = combination_of_columns | join(", ") %}

with key_counts as (

    select
        {{ columns }},
        count(*) as row_count
    from {{ model }}
    group by {{ columns }}

)

select *
from key_counts
where row_count > 1

{% endtest %}
