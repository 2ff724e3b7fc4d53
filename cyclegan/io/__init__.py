"""Input and output, one module per job: safe writes (`files`), the records we write and read
back (`records`), what an output may replace (`outputs`), and stored samples and file formats
(`samples`, `formats`)."""
