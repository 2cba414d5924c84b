"""Image datasets: the procedural synthetic set and image folders."""
