"Packaging: every value comes from settings.ini, the single source of the version and the requirements."
from configparser import ConfigParser
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

licenses = dict(apache2=('Apache Software License 2.0','OSI Approved :: Apache Software License'))
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive']
lic = licenses[cfg['license']]
requirements = cfg.get('requirements', '').split()
dev_requirements = cfg.get('dev_requirements', '').split()

setuptools.setup(
    name=cfg['lib_name'], license=lic[0], version=cfg['version'],
    description=cfg['description'], long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown', keywords=cfg['keywords'],
    author=cfg['author'], author_email=cfg['author_email'], url=cfg['git_url'],
    classifiers=['Development Status :: ' + statuses[int(cfg['status'])], 'Intended Audience :: ' + cfg['audience'],
                 'License :: ' + lic[1], 'Natural Language :: ' + cfg['language'],
                 'Programming Language :: Python :: ' + cfg['min_python']],
    packages=setuptools.find_packages(include=['compkit', 'compkit.*']), include_package_data=True,
    install_requires=requirements, extras_require={'dev': dev_requirements},
    python_requires='>=' + cfg['min_python'], zip_safe=False,
    entry_points={'console_scripts': cfg.get('console_scripts', '').split(), 'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]})
