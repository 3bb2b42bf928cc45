"""Infrastructure below every stage: paths and object stores, errors, the command line, run start-up and
multi-process rules, shared config fields, caches (assets, compiled programs), progress bars, parameter trees."""
